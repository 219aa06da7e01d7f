"""The web console (`adflow ui`): pipelines, models, experiments; core.py does the work, app.py serves it."""
