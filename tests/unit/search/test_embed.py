"""``search/embed.py``: the files of ``index`` on the one embedding route, for a torch module and for
anything else with an ``embed`` (an ONNX Runtime session) alike: shape order, unreadable files, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cbir_lightning.errors import CbirError
from cbir_lightning.export.preprocess import preprocess
from cbir_lightning.search.embed import ImageFiles, embed_files, image_header, shape_order

SPEC = {"mode": "RGB", "invert": False, "resize": "fit", "size": 16, "mean": None, "std": None}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))

    def embed(self, x):
        return x.mean((2, 3)) * self.weight


class TorchModel:  # what embed_files needs of a SearchModel
    def __init__(self) -> None:
        self.embedding_model = Net()

    def transform(self, image):
        return preprocess(image, SPEC)

    def post_process(self, x):
        return x.float() * 2  # e.g. a whitening: applied once, after the route


class SessionModel(TorchModel):  # what embed_files needs of an OnnxSearchModel: no nn.Module
    def __init__(self) -> None:
        self.net = Net()
        self.embedding_model = self

    def embed(self, x):
        assert x.device.type == "cpu"
        return self.net.embed(x)


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 20), (20, 40), (40, 20), (30, 30), (40, 20)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_shape_order_groups_files_whose_tensors_stack():
    headers = [("RGB", 40, 20), ("RGB", 20, 40), ("RGB", 80, 40), ("RGB", 30, 30), ("L", 40, 20)]
    transform = lambda image: preprocess(image, SPEC)  # noqa: E731
    assert shape_order(headers, transform) == [0, 2, 4, 1, 3]  # 16x8 (RGB and L alike), 8x16, 16x16


def test_module_and_session_give_the_same_vectors_in_file_order_unreadable_ones_labelled(photos):
    headers = [image_header(p) for p in photos]
    photos[1].write_bytes(b"broken")  # after its header was read: decoded as a blank image, label -1
    expected = torch.cat([Net().embed(preprocess(Image.open(p), SPEC)[None]) for p in photos[2:]]) * 2
    for model in (TorchModel(), SessionModel()):
        vectors, labels = embed_files(model, photos, headers, batch_size=2, options={"accelerator": "cpu"})
        assert labels.tolist() == [0, -1, 0, 0, 0]
        assert torch.allclose(vectors[2:], expected, atol=1e-6)
    assert ImageFiles(photos, headers, TorchModel().transform)[1][1] == -1


def test_unknown_options_are_one_line(photos):
    with pytest.raises(CbirError, match="unknown option 'callbacks'"):
        embed_files(TorchModel(), photos, [image_header(p) for p in photos], options={"callbacks": []})
