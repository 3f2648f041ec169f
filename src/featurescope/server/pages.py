"""The explorer's pages: fixed HTML files from the package's static folder, plus its JS, CSS and plotly.js.

Page routes map a fixed URL to a fixed file name; /static/ serves files under the package's static folder
only (Starlette's StaticFiles resolves each path and refuses anything outside it). plotly.js is not copied
into this package: it is the minified bundle that ships inside the `plotly` Python package (a dependency),
served at /static/vendor/plotly.min.js.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from featurescope.errors import FeaturescopeError
from featurescope.server.api_store import explorer

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/overview": "overview.html", "/map": "map.html", "/search": "search.html", "/steer": "steer.html",
         "/docs": "api.html", "/features": "features.html", "/multilingual": "multilingual.html",
         "/safety": "safety.html", "/saes": "saes.html"}
router = APIRouter(include_in_schema=False)


def plotly_js() -> Path:
    """The path of plotly.min.js inside the installed `plotly` package."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FeaturescopeError(f"{path}: plotly.min.js is missing from the plotly package; reinstall plotly")
    return path


def _page(name: str, status: int = 200) -> FileResponse:
    return FileResponse(STATIC / name, status_code=status, media_type="text/html",
                        headers={"cache-control": "no-cache"})


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/overview", status_code=307)


def _add_page(url: str, name: str) -> None:
    router.add_api_route(url, lambda: _page(name), methods=["GET"], name=name)


for _url, _name in PAGES.items():
    _add_page(_url, _name)


@router.get("/feature/{feature_id}")
def feature_page(request: Request, feature_id: int) -> FileResponse:
    """The feature page (404 status, same page, for ids the database does not hold)."""
    ok = 0 <= feature_id < explorer(request).d_sae
    return _page("feature.html", 200 if ok else 404)


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


@router.get("/static/vendor/plotly.min.js")
def plotly_bundle() -> FileResponse:
    return FileResponse(plotly_js(), media_type="text/javascript", headers={"cache-control": "max-age=86400"})


def static_files() -> StaticFiles:
    """The package's static folder (symlinks not followed)."""
    return StaticFiles(directory=STATIC, follow_symlink=False)
