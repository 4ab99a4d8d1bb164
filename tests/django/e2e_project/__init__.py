"""A minimal Django project for the end-to-end tests, served by gunicorn (WSGI) and uvicorn (ASGI)."""
