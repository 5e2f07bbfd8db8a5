"""Checks, on a machine with CUDA, that featcache's named resize and an exported model give on the GPU
what they give on the CPU: how many resized pixel values differ (and by how much), how far the class
probabilities are apart, and how many top-1 predictions differ. Prints one JSON object.

    python scripts/cuda_check.py --images FOLDER --image-size 64 [--model MODEL [--labels-from-folders]]

MODEL is an exported file or a run directory (featcache predict's MODEL); FOLDER is searched recursively.
"""
import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import featcache
from featcache.data.clean_view import resize_shorter_side
from featcache.deploy.predict import collect_inputs
from featcache.data.transform import resize_size


def resize_agreement(files: list[Path], image_size: int) -> dict:
    """resize_shorter_side on CPU and CUDA over every image: differing values and the largest difference."""
    size, differing, values, largest = resize_size(image_size), 0, 0, 0.0
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for path in files:
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        by_shape.setdefault(tuple(pixels.shape), []).append(pixels)
    for images in by_shape.values():
        batch = torch.stack(images)
        cpu = resize_shorter_side(batch, size)
        cuda = resize_shorter_side(batch.cuda(), size).cpu()
        differing += int((cpu != cuda).sum())
        values += cpu.numel()
        largest = max(largest, float((cpu - cuda).abs().max()))
    return {"image_size": image_size, "resize_to": size, "images": len(files), "values": values,
            "differing_values": differing, "largest_difference_grey_levels": largest}


def prediction_agreement(model: str, files: list[Path], labels_from_folders: bool) -> dict:
    classes = featcache.load_model(model)[1]["classes"]
    with tempfile.TemporaryDirectory() as folder:
        results = {device: featcache.predict(model, files, Path(folder) / f"{device}.json", output_format="json",
                                             top_k=len(classes), device=device, progress=False)
                   for device in ("cpu", "cuda")}

    def probabilities(result):
        return np.array([[dict((e["class"], e["probability"]) for e in row["top"])[name] for name in classes]
                         for row in result["rows"]])

    cpu, cuda = probabilities(results["cpu"]), probabilities(results["cuda"])
    figures = {"model": str(model), "images": len(files), "max_abs_probability_difference": float(np.abs(cpu - cuda).max()),
               "top1_differences": int((cpu.argmax(1) != cuda.argmax(1)).sum()),
               "images_per_s": {device: result["images_per_second"] for device, result in results.items()}}
    if labels_from_folders:
        truth = np.array([classes.index(Path(path).parent.name) for path in files])
        figures["accuracy"] = {device: float((p.argmax(1) == truth).mean()) for device, p in (("cpu", cpu), ("cuda", cuda))}
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--image-size", type=int, action="append", required=True)
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--labels-from-folders", action="store_true")
    args = parser.parse_args()
    files = collect_inputs([args.images])
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(),
              "resize": [resize_agreement(files, size) for size in args.image_size],
              "predict": [prediction_agreement(model, files, args.labels_from_folders) for model in args.model]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
