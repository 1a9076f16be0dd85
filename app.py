"""vae-triton demo: `python app.py` (or a Hugging Face Space, which runs this file).

    python app.py                                  # the bundled dSprites β ladder, http://127.0.0.1:7860
    python app.py --checkpoint runs/celeba-b1      # a run directory, or a folder of runs as a β ladder
    python app.py --hub-repo user/vae-ladder       # models from the Hub (offline: the bundled ladder)
    python app.py --host 0.0.0.0 --port 8080 --share

Environment: VAE_CHECKPOINT, VAE_HUB_REPO and VAE_DEVICE stand in for the flags; Gradio's own
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT apply when --host / --port are not given.
"""

from __future__ import annotations

from demo.serve import create_demo, default_threads, main, parse_args  # noqa: F401  (the entry points)

if __name__ == "__main__":
    main()
else:
    # `gradio app.py` (hot reload) and other importers look for a module-level `demo`: the flags'
    # defaults, i.e. the environment variables above.
    _defaults = parse_args([])
    demo = create_demo(_defaults.checkpoint, _defaults.hub_repo, _defaults.device, _defaults.threads)
