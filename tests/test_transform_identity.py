"""The cache key names the transform by TRANSFORM_VERSION, so the code behind a view's pixels must not
change without it: this test hashes that code (comments, docstrings and formatting stripped) and fails
when the hash is not the one recorded for the current version."""
import ast
import hashlib
import inspect
import sys
import textwrap

import pytest

from featcache.data import clean_view, datasets as data, images, transform, views as augment

# Everything that decides a view's pixels, from reading the file (Split.read) onwards.
PIXEL_CODE = (data.Split.read, data.read_image, transform.resize_size, clean_view.resize_shorter_side, clean_view.center_crop,
              clean_view.normalization, clean_view.normalize_, clean_view.CleanView, augment.ViewParams,
              images.DecodedSplit, augment.ImageBatch, augment.view_params, augment.make_views,
              augment._resized_crops, augment._color_jitter_, augment._adjust_brightness_, augment._adjust_contrast_)
PIXEL_CONSTANTS = ("IMAGENET_MEAN", "IMAGENET_STD", "SCALE", "RATIO", "BRIGHTNESS", "CONTRAST")

# TRANSFORM_VERSION -> sha256 of the code below as Python 3.11's ast.unparse prints it (other versions
# may print the same code differently). Changing the pixels: bump transform.TRANSFORM_VERSION and add its
# hash here. Changing only comments, docstrings or formatting: nothing to do.
RECORDED_WITH = (3, 11)
RECORDED = {
    1: "889843ff9d6239feb99f6843c238c18efb42a4f53deadc2462e27ab5db1f0e84",
    2: "4517243c49a9ae7b3c133a088d52b39d0923822c0a2a5fd31d0fa0948e532cae",
}


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return tree


def pixel_code_digest() -> str:
    digest = hashlib.sha256()
    for obj in PIXEL_CODE:
        tree = _without_docstrings(ast.parse(textwrap.dedent(inspect.getsource(obj))))
        digest.update(ast.unparse(tree).encode())
    for name in PIXEL_CONSTANTS:
        digest.update(f"{name}={getattr(transform, name)!r}".encode())
    return digest.hexdigest()


@pytest.mark.skipif(sys.version_info[:2] != RECORDED_WITH,
                    reason=f"hashes are recorded with Python {RECORDED_WITH[0]}.{RECORDED_WITH[1]}'s ast.unparse")
def test_pixel_code_matches_its_transform_version():
    current = pixel_code_digest()
    assert RECORDED.get(transform.TRANSFORM_VERSION) == current, (
        f"the code that determines a view's pixels changed (sha256 {current}) but transform.TRANSFORM_VERSION is "
        f"still {transform.TRANSFORM_VERSION}: bump it (every cache gets a new key) and record the new hash here")


def test_the_version_is_in_the_cache_key():
    assert transform.transform_description(64)["version"] == transform.TRANSFORM_VERSION


def test_comments_and_docstrings_do_not_count_but_code_does():
    source = 'def f(x):\n    """Doc."""\n    return x * 2  # twice\n'
    same = 'def f(x):\n    # another comment\n    return x * 2\n'
    other = 'def f(x):\n    return x * 3\n'
    unparse = lambda text: ast.unparse(_without_docstrings(ast.parse(text)))  # noqa: E731
    assert unparse(source) == unparse(same) != unparse(other)
