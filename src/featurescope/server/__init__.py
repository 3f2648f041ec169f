"""The web explorer: a FastAPI app over one feature database (and optionally the model + SAE), and its pages.

`create_app(db_path, sae=None, model=None)` builds the app; `serve(...)` runs it with uvicorn. See
docs/explorer.md for the pages, the API and the security choices.
"""

from featurescope.server.app import create_app
from featurescope.server.run import serve

__all__ = ["create_app", "serve"]
