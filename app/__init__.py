"""The soundsight Voila app: hear a spoken word or see an image, and have it predicted.

    python -m app.serve --models_dir models --data_dir data
"""
