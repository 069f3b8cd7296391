"""The front ends: the Streamlit review studio (app.py + pages/) and the Gradio demo. API clients only."""
