"""`python -m services.lead_intake`."""

from services.lead_intake.app import create_app
from services.lead_intake.settings import Settings
from shared.serve import serve

if __name__ == "__main__":
    settings = Settings()
    serve(create_app(settings), settings)
