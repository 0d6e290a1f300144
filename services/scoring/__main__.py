"""`python -m services.scoring`."""

from services.scoring.app import create_app
from services.scoring.settings import Settings
from shared.serve import serve

if __name__ == "__main__":
    settings = Settings()
    serve(create_app(settings), settings)
