"""The Gradio demo: `demo.ui.build_demo(ladder)` over a β ladder from `demo.inference.resolve_ladder`.

`demo.inference` and `demo.images` hold everything that is not Gradio (model loading, image preparation,
the handlers' computations), so they are tested and benchmarked without a server.
"""
