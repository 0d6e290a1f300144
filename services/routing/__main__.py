"""`python -m services.routing`."""

from services.routing.app import create_app
from services.routing.settings import Settings
from shared.serve import serve

if __name__ == "__main__":
    settings = Settings()
    serve(create_app(settings), settings)
