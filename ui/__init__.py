"""The Gradio demo page: steered and baseline replies side by side (built on ``steering``)."""
