"""`python -m demo`: the Gradio app (the same as `python app.py`), from any folder once the project is
installed with `pip install -e .`; the bundled models come with the package."""

from demo.serve import main

main()
