"""Image inputs: list the (image, text) items of a folder or a JSONL file, decode images, fit them to a size limit.

A folder holds images (.png, .jpg, .jpeg, .webp, .bmp, .gif, .tif, .tiff), each with an optional caption in a
text file of the same name (`bridge.jpg` + `bridge.txt`). A JSONL file holds one `{"image": PATH, "text": ...}`
per line, PATH relative to the file's folder unless absolute. Errors are one-line `FeaturescopeError`s.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from featurescope.errors import FeaturescopeError

if TYPE_CHECKING:
    from featurescope.models.vision import Limit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_DECODE_PIXELS = 200_000_000
"""Images with more pixels are refused before decoding (a decompression bomb, or a scan far beyond any VLM)."""


class ImageItem(NamedTuple):
    """One input: an image file and the text that goes with it ("" if none)."""

    path: Path
    text: str
    ref: str
    """The name it is recorded under: the path relative to the folder or JSONL file."""


class Fitted(NamedTuple):
    """A decoded RGB image, downscaled if it was over the limit."""

    image: Any
    """PIL.Image.Image in RGB."""
    original_size: tuple[int, int]
    """(width, height) of the file."""
    resized: bool


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise FeaturescopeError("images need Pillow: pip install pillow") from None
    return Image


def _folder_items(folder: Path) -> list[ImageItem]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    items = []
    for p in files:
        caption = p.with_suffix(".txt")
        text = caption.read_text(encoding="utf-8", errors="replace").strip() if caption.is_file() else ""
        items.append(ImageItem(p, text, p.relative_to(folder).as_posix()))
    return items


def _jsonl_items(path: Path) -> list[ImageItem]:
    items = []
    base = path.parent
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise FeaturescopeError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) or not rec["image"]:
                raise FeaturescopeError(f'{path}:{n}: expected {{"image": PATH, "text": ...}}')
            text = rec.get("text", "")
            if not isinstance(text, str):
                raise FeaturescopeError(f"{path}:{n}: \"text\" must be a string")
            image = Path(rec["image"]).expanduser()
            full = image if image.is_absolute() else base / image
            if not full.is_file():
                raise FeaturescopeError(f"{path}:{n}: image {rec['image']} not found")
            items.append(ImageItem(full, text.strip(), rec["image"]))
    return items


def list_items(source: str | Path) -> list[ImageItem]:
    """The items of a folder of images (captions in NAME.txt) or of a JSONL file of {image, text}."""
    path = Path(source).expanduser()
    if not str(source):
        raise FeaturescopeError("no images given (`images`: a folder of images or a .jsonl file)", settings=("images",))
    if path.is_dir():
        items = _folder_items(path)
        if not items:
            raise FeaturescopeError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    elif path.is_file() and path.suffix.lower() == ".jsonl":
        items = _jsonl_items(path)
        if not items:
            raise FeaturescopeError(f"{path}: holds no {{image, text}} records")
    elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        items = [ImageItem(path, "", path.name)]
    elif path.exists():
        raise FeaturescopeError(f"{path}: expected a folder of images, a .jsonl file or an image file")
    else:
        raise FeaturescopeError(f"{path}: no such file or folder")
    refs = [it.ref for it in items]
    if len(set(refs)) != len(refs):
        dup = next(r for r in refs if refs.count(r) > 1)
        raise FeaturescopeError(f"{path}: image {dup} is listed twice")
    return items


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header; a file that is not a readable image raises."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise FeaturescopeError(f"cannot decode image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                ) from None


def load_image(path: Path) -> Any:
    """The image in `path` decoded to RGB (PIL); a file that cannot be decoded raises a one-line error."""
    Image = _pil()
    w, h = image_size(path)
    if w * h > MAX_DECODE_PIXELS:
        raise FeaturescopeError(f"cannot decode image {path}: {w}×{h} is over {MAX_DECODE_PIXELS:,} pixels")
    try:
        with Image.open(path) as im:
            im.load()
            return _rgb(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FeaturescopeError(f"cannot decode image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                ) from None


def _rgb(im: Any) -> Any:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        Image = _pil()
        rgba = im.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return im.convert("RGB")


def fit(image: Any, limit: Limit) -> Fitted:
    """`image` downscaled (aspect kept, Lanczos) so that it is within `limit`; `resized` says whether it was."""
    w, h = image.size
    scale = 1.0
    if limit.longest_edge and max(w, h) > limit.longest_edge:
        scale = limit.longest_edge / max(w, h)
    if limit.max_pixels and w * h * scale * scale > limit.max_pixels:
        scale = math.sqrt(limit.max_pixels / (w * h))
    if limit.input_size:
        scale = min(scale, max(limit.input_size[0] / w, limit.input_size[1] / h))
    if scale >= 1.0:
        return Fitted(image, (w, h), False)
    size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
    return Fitted(image.resize(size, _pil().Resampling.LANCZOS), (w, h), True)


def thumbnail(image: Any, box: tuple[float, float, float, float], side: int, *, quality: int = 85) -> bytes:
    """JPEG bytes of the region `box` (left, top, right, bottom; may reach outside: filled black) of `image`,
    scaled so that its longer side is `side` pixels."""
    left, top, right, bottom = box
    crop = image.crop((round(left), round(top), round(right), round(bottom)))
    w, h = crop.size
    scale = side / max(w, h)
    crop = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), _pil().Resampling.BICUBIC)
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
