"""`python -m services.feedback`."""

from services.feedback.app import create_app
from services.feedback.settings import Settings
from shared.serve import serve

if __name__ == "__main__":
    settings = Settings()
    serve(create_app(settings), settings)
