"""The Streamlit prompt-to-audio app. It calls pipelines and eval; it holds no model code."""
