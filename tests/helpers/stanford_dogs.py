"""A Stanford Dogs release generated in its formats: lists/*.mat written with scipy.io.savemat as cell
arrays of strings, VOC XML annotations, JPEG images under Images/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


XML = """<annotation>
	<folder>{folder}</folder>
	<filename>{name}</filename>
	<source>
		<database>ImageNet database</database>
	</source>
	<size>
		<width>{width}</width>
		<height>{height}</height>
		<depth>3</depth>
	</size>
	<segment>0</segment>
{objects}</annotation>
"""


OBJECT = """	<object>
		<name>{breed}</name>
		<pose>Unspecified</pose>
		<truncated>0</truncated>
		<difficult>0</difficult>
		<bndbox>
			<xmin>{0}</xmin>
			<ymin>{1}</ymin>
			<xmax>{2}</xmax>
			<ymax>{3}</ymax>
		</bndbox>
	</object>
"""


def cell(strings: list[str]) -> np.ndarray:
    """An [N, 1] MATLAB cell array of strings, as in the release's list files."""
    out = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        out[i, 0] = np.array([s])
    return out


def write_annotation(path: Path, breed: str, size: tuple[int, int], boxes: list[tuple[int, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = "".join(OBJECT.format(*box, breed=breed.split("-", 1)[1]) for box in boxes)
    path.write_text(
        XML.format(
            folder=breed.split("-")[0][1:], name=path.name, width=size[0], height=size[1], objects=objects
        )
    )


def write_release(root: Path, train: int = 4, test: int = 2) -> None:
    """Images 40 x 30: background grey 30, dog box (8..28, 5..25) bright with the breed's colour."""
    colours = [(250, 40, 40), (40, 250, 40), (40, 40, 250)]
    lists = {"train": ([], [], []), "test": ([], [], [])}
    n = 0
    for label, breed in enumerate(BREEDS):
        wnid = breed.split("-")[0]
        for split, count in (("train", train), ("test", test)):
            for _ in range(count):
                n += 1
                name = f"{wnid}_{n}"
                pixels = np.full((30, 40, 3), 30, np.uint8)
                pixels[5:25, 8:28] = colours[label]
                (root / "Images" / breed).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(
                    root / "Images" / breed / f"{name}.jpg", quality=100, subsampling=0
                )
                write_annotation(root / "Annotation" / breed / name, breed, (40, 30), [(8, 5, 28, 25)])
                files, annotations, labels = lists[split]
                files.append(f"{breed}/{name}.jpg")
                annotations.append(f"{breed}/{name}")
                labels.append(label + 1)
    (root / "lists").mkdir()
    for split, (files, annotations, labels) in lists.items():
        scipy.io.savemat(
            root / "lists" / f"{split}_list.mat",
            {
                "file_list": cell(files),
                "annotation_list": cell(annotations),
                "labels": np.asarray(labels, dtype=np.float64)[:, None],
            },
        )
