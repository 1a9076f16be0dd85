"""`python -m demo`: the Gradio app (the same as `python app.py`), from any folder once the project is
installed with `pip install -e .`; the bundled models come with the package."""

try:  # ZeroGPU needs `spaces` imported before torch touches CUDA; elsewhere it is simply absent
    import spaces  # noqa: F401
except ImportError:
    pass

from demo.serve import main

main()
