"""featcache export and predict: the exported file runs on PyTorch alone and gives featcache's own
numbers; predict batches images of any size without changing a pixel, in input order."""
import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import featcache
from featcache.data.images import DecodedSplit
from featcache.data.views import make_views
from featcache.backbone import load_backbone
from featcache.deploy.export import run_model
from featcache.data.clean_view import CleanView, batchable, resize_shorter_side

from conftest import assert_clean_failure

SIZE = 32  # clean views resize the shorter side to 37: these images shrink and grow, in both orientations
SIZES = ((32, 32), (64, 48), (30, 58))


@pytest.fixture(scope="module")
def trained(make_image_folder, tmp_path_factory):
    """A feature-extraction run (backbone from a weights file) and a fine-tuning run on synthetic
    images of three sizes (square, landscape, portrait), each exported."""
    root = tmp_path_factory.mktemp("export")
    data = make_image_folder(8, 4, sizes=SIZES)
    weights = root / "backbone.pth"
    torch.save(load_backbone("random", seed=3).state_dict(), weights)
    spec = featcache.CacheSpec(featcache.DataSpec(str(data)), weights=str(weights), image_size=SIZE, views=2,
                               cache_dir=root / "cache")
    featcache.extract(spec, progress=False)
    runs = {"feature-extraction": featcache.train_head(spec, epochs=3, out=root / "fe"),
            "fine-tuning": featcache.finetune(spec.data, str(weights), epochs=2, image_size=SIZE, out=root / "ft")}
    for approach, run in runs.items():
        featcache.export(run.path, root / f"{approach}.pt2")
    return {"root": root, "data": data, "weights": weights, "runs": runs,
            "dataset": spec.data.load()}


TORCH_ALONE = textwrap.dedent("""
    import importlib, json, sys
    sys.modules["featcache"] = None  # `import featcache` and `import torchvision` now fail
    sys.modules["torchvision"] = None
    for name in ("featcache", "torchvision"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} could be imported")
    import numpy as np
    import torch
    from PIL import Image

    model_path, files, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    extra = {"featcache.json": ""}
    model = torch.export.load(model_path, extra_files=extra).module()
    rows = []
    for path in files:  # one image per call: every size and orientation as it is
        pixels = np.array(Image.open(path).convert("RGB"))
        rows.append(model(torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous())[0].detach())
    torch.save({"probabilities": torch.stack(rows), "classes": json.loads(extra["featcache.json"])["classes"]}, out)
""")


@pytest.mark.parametrize("approach", ["feature-extraction", "fine-tuning"])
def test_exported_file_on_torch_alone_gives_featcaches_numbers(trained, approach, tmp_path):
    run, dataset = trained["runs"][approach], trained["dataset"]
    files = [str(path) for path in dataset.test.paths]
    assert {Image.open(path).size for path in files} == set(SIZES)
    done = subprocess.run([sys.executable, "-c", TORCH_ALONE, str(trained["root"] / f"{approach}.pt2"),
                           json.dumps(files), str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    exported = torch.load(tmp_path / "out.pt")
    assert exported["classes"] == list(dataset.classes)

    classifier, _ = run_model(run.path)  # featcache's own model, on its own clean views of the same files
    images = featcache.load_images(featcache.DataSpec(str(trained["data"])), image_size=SIZE, device="cpu")
    with torch.no_grad():
        own = classifier.network(images.test_batch(slice(None))).softmax(1)
    torch.testing.assert_close(exported["probabilities"], own, rtol=0, atol=1e-5)
    labels = torch.from_numpy(dataset.test.labels)
    accuracy = (exported["probabilities"].argmax(1) == labels).sum().item() / len(labels)
    assert accuracy == run.final_test_acc  # fp32 run: exactly the recorded final test accuracy
    predicted = featcache.predict(trained["root"] / f"{approach}.pt2", [trained["data"] / "test"],
                                  tmp_path / "p.csv", progress=False)  # what `featcache predict` prints
    assert predicted["folder_accuracy"] == run.final_test_acc
    stored = featcache.Run.load(run.path).predictions  # the last epoch's predictions the run stored
    torch.testing.assert_close(torch.from_numpy(stored["probabilities"]), own, rtol=0, atol=1e-5)
    assert list(stored["ids"]) == dataset.test.ids


def test_exported_preprocessing_is_decodes_view_zero_exactly(trained):
    """CleanView, eager and as a torch.export program with dynamic sizes, and featcache's decode + view 0
    are the same arithmetic: bit-equal, on images that shrink and grow, in both orientations."""
    dataset = trained["dataset"]
    decoded = DecodedSplit(dataset.test, SIZE)
    clean = CleanView(SIZE)
    example = torch.zeros(2, 3, 41, 45, dtype=torch.uint8)
    sizes = {2: torch.export.Dim("height", min=2, max=4096), 3: torch.export.Dim("width", min=2, max=4096)}
    exported = torch.export.export(clean, (example,), dynamic_shapes=({0: torch.export.Dim("n"), **sizes},)).module()
    for index, path in enumerate(dataset.test.paths):
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].contiguous()
        expected = make_views([decoded[index]], [index], 0, "test", 0, SIZE)
        assert torch.equal(clean(pixels), expected)
        assert torch.equal(exported(pixels), expected)


@pytest.mark.parametrize("shape", [(3, 37, 53), (3, 53, 37), (3, 300, 200), (3, 38, 38), (3, 2, 9), (3, 37, 37)])
def test_batchable_images_give_the_same_clean_view(shape):
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(sum(shape)))
    ready = batchable(pixels, SIZE)
    assert tuple(ready.shape[1:]) in ((37, 37), (37, 38), (38, 37))
    clean = CleanView(SIZE)
    assert torch.equal(clean(ready[None]), clean(pixels[None]))


def test_resize_does_not_depend_on_the_batch():
    images = torch.randint(0, 256, (5, 3, 41, 29), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    together = resize_shorter_side(images, 37)
    assert torch.equal(together, torch.cat([resize_shorter_side(image[None], 37) for image in images]))
    assert together.shape[-2:] == (37 * 41 // 29, 37) and torch.equal(together, together.round())


def write_mixed_inputs(folder):
    """Images of many sizes, both orientations, one of them large."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for k, (h, w) in enumerate([(32, 32), (28, 40), (36, 24), (200, 300), (61, 17), (33, 33), (40, 28), (32, 31)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


@pytest.mark.parametrize("approach", ["feature-extraction", "fine-tuning"])
def test_predict_batches_any_sizes_in_input_order(trained, approach, tmp_path, run_cli):
    mixed = write_mixed_inputs(tmp_path / "mixed")
    single = trained["dataset"].test.paths[0]
    model_file = trained["root"] / f"{approach}.pt2"
    result = featcache.predict(model_file, [single, mixed], tmp_path / "p.csv", batch_size=3, progress=False)
    assert result["images"] == 9 and result["forward_passes"] <= 5  # 9 images of 9 sizes, 3 shapes, batches of 3
    assert result["folder_accuracy"] is None  # mixed/ is not a class
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    files = [single, *sorted(mixed.iterdir())]
    assert [row["path"] for row in rows] == [str(path) for path in files]
    model, metadata = featcache.load_model(model_file)
    for row, path in zip(rows, files):  # each as it is, one at a time
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].contiguous()
        with torch.no_grad():
            probabilities = model(pixels)[0]
        expected = [metadata["classes"][k] for k in probabilities.argsort(descending=True)]
        assert [row[f"class_{k}"] for k in (1, 2, 3)] == expected
        got = torch.tensor([float(row[f"probability_{k}"]) for k in (1, 2, 3)])
        torch.testing.assert_close(got, probabilities.sort(descending=True).values, rtol=0, atol=2e-6)
    # The run directory (featcache's own model) gives the same answers, as JSON.
    result = run_cli("predict", trained["runs"][approach].path, single, mixed, "--out", tmp_path / "p.json",
                     "--format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    predictions = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [entry["top"][0]["class"] for entry in predictions] == [row["class_1"] for row in rows]
    for entry, row in zip(predictions, rows):
        assert entry["top"][0]["probability"] == pytest.approx(float(row["probability_1"]), abs=1e-5)


def test_predict_turns_a_photo_upright_by_its_exif_orientation(trained, tmp_path):
    """A JPEG stored sideways with an orientation tag gets the upright image's probabilities, not the
    sideways pixels' (test_own_images.oriented_photo), from the exported file and from the run folder."""
    from test_own_images import oriented_photo

    folder = oriented_photo(tmp_path / "photos")
    for source in (trained["root"] / "fine-tuning.pt2", trained["runs"]["fine-tuning"].path):
        result = featcache.predict(source, [folder], tmp_path / "p.json", output_format="json", progress=False)
        assert result["images"] == 3
        top = {entry["path"].rsplit("/", 1)[-1]: {row["class"]: row["probability"] for row in entry["top"]}
               for entry in json.loads((tmp_path / "p.json").read_text())["predictions"]}
        for name, probability in top["rot.jpg"].items():
            assert probability == pytest.approx(top["upright.png"][name], abs=1e-5)
        assert max(abs(probability - top["sideways.png"][name]) for name, probability in top["rot.jpg"].items()) > 1e-4


def copy_run(run_dir, target):
    import shutil

    return shutil.copytree(run_dir, target)


def test_bad_run_directories_and_weights(trained, tmp_path, run_cli):
    fe = trained["runs"]["feature-extraction"].path
    out = tmp_path / "model.pt2"
    assert_clean_failure(run_cli("export", tmp_path / "nope", "--out", out), "nope", "does not exist")
    no_weights = copy_run(fe, tmp_path / "no-weights")
    (no_weights / "weights.pt").unlink()
    assert_clean_failure(run_cli("export", no_weights, "--out", out), "weights.pt", "missing")
    misfit = copy_run(fe, tmp_path / "misfit")
    torch.save(torch.nn.Linear(512, 5).state_dict(), misfit / "weights.pt")
    assert_clean_failure(run_cli("export", misfit, "--out", out), "does not fit", "Linear(512, 3)")
    other = tmp_path / "other.pth"
    torch.save(load_backbone("random", seed=4).state_dict(), other)
    assert_clean_failure(run_cli("export", fe, "--out", out, "--weights", other), "other.pth",
                         "are not those the head", "sha256")
    assert_clean_failure(run_cli("predict", fe, trained["data"] / "test", "--out", tmp_path / "p.csv",
                                 "--weights", other), "are not those the head")
    assert_clean_failure(run_cli("export", fe, "--out", out, "--weights", "random"), "random", "trained on")
    assert_clean_failure(run_cli("export", trained["runs"]["fine-tuning"].path, "--out", out, "--weights", other),
                         "--weights", "fine-tuning")
    elsewhere = copy_run(fe, tmp_path / "other-versions")  # a head on random weights made by other torch versions
    record = json.loads((elsewhere / "history.json").read_text())
    record["cache_attrs"].update(weights="random:seed=0:torch==1.0:torchvision==0.1", weights_source="random")
    (elsewhere / "history.json").write_text(json.dumps(record))
    assert_clean_failure(run_cli("export", elsewhere, "--out", out), "torch==1.0", "versions")
    older = copy_run(fe, tmp_path / "older")  # trained on PIL-resized images, before the resize was named
    record["cache_attrs"].update(transform=json.dumps({"version": 1}))
    (older / "history.json").write_text(json.dumps(record))
    assert_clean_failure(run_cli("export", older, "--out", out), "transform version 1", "train it again")
    assert not out.exists() and not (tmp_path / "p.csv").exists()
    assert not list(tmp_path.glob(".tmp-*"))  # featcache.files' temporaries


def test_backbone_weights_moved_since_extraction(trained, tmp_path, run_cli):
    fe = trained["runs"]["feature-extraction"].path
    moved = tmp_path / "moved.pth"
    trained["weights"].rename(moved)
    try:
        assert_clean_failure(run_cli("export", fe, "--out", tmp_path / "m.pt2"), "do not exist", "--weights")
        result = run_cli("export", fe, "--out", tmp_path / "m.pt2", "--weights", moved)  # same bytes: accepted
        assert result.exit_code == 0, result.output
    finally:
        moved.rename(trained["weights"])


def test_bad_images_and_empty_folders(trained, tmp_path, run_cli):
    model = trained["root"] / "feature-extraction.pt2"
    folder = write_mixed_inputs(tmp_path / "images")
    (folder / "3.png").write_bytes(b"not an image at all")
    out = tmp_path / "p.csv"
    assert_clean_failure(run_cli("predict", model, folder, "--out", out, "--quiet"), "3.png", "--skip-bad")
    assert not out.exists()
    result = run_cli("predict", model, folder, "--out", out, "--skip-bad", "--quiet")
    assert result.exit_code == 0, result.output
    assert "3.png" in result.stderr and "1 unreadable" in result.stdout
    rows = list(csv.DictReader(out.open()))
    assert [row["path"] for row in rows] == [str(path) for path in sorted(folder.iterdir())]
    bad = [row for row in rows if row["error"]]
    assert [row["path"] for row in bad] == [str(folder / "3.png")] and bad[0]["class_1"] == ""
    assert all(row["class_1"] in trained["dataset"].classes for row in rows if not row["error"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert_clean_failure(run_cli("predict", model, tmp_path / "empty", "--out", tmp_path / "e.csv"), "empty", "no images")
    assert_clean_failure(run_cli("predict", model, tmp_path / "missing.png", "--out", tmp_path / "e.csv"),
                         "missing.png", "does not exist")
    assert_clean_failure(run_cli("predict", tmp_path / "model.pt2", folder, "--out", tmp_path / "e.csv"),
                         "model.pt2", "does not exist")
    assert_clean_failure(run_cli("predict", folder / "0.png", folder, "--out", tmp_path / "e.csv"),
                         "0.png", "not a model written by featcache export")
    assert_clean_failure(run_cli("predict", model, folder, "--out", tmp_path / "e.csv", "--top-k", 4, "--skip-bad"),
                         "--top-k", "between 1 and 3")
    assert not (tmp_path / "e.csv").exists()
