"""The Gradio demo of the distilled student: `python -m studio.demo` (or `make serve`). A front end: it reads the
served model through the engine API (or an export folder) and owns nothing persistent."""
