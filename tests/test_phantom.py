"""The synthetic phantom: deterministic, and its labels agree with each other exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from weaklesion.data.phantom import SIZE_STRATA, instance_centres, make_phantom_case

SEEDS = range(6)


@pytest.fixture(scope="module")
def cases():
    return [make_phantom_case(seed) for seed in SEEDS]


def test_same_seed_same_case_and_other_seed_differs():
    first, again = make_phantom_case(3), make_phantom_case(3)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.instances, again.instances)
    np.testing.assert_array_equal(first.points, again.points)
    assert not np.array_equal(first.image, make_phantom_case(4).image)


def test_shapes_dtypes_and_affine():
    case = make_phantom_case(1, shape=(20, 24, 28), spacing=(2.0, 1.0, 0.5), n_lesions=4)
    assert case.image.shape == (2, 20, 24, 28) and case.image.dtype == np.float32
    assert case.instances.shape == (20, 24, 28) and case.instances.dtype == np.int32
    assert case.points.shape == (4, 3) and case.count == 4
    np.testing.assert_array_equal(case.affine, np.diag([2.0, 1.0, 0.5, 1.0]))
    assert case.spacing == (2.0, 1.0, 0.5)
    assert np.isfinite(case.image).all() and case.image.min() >= 0


def test_instances_are_distinct_connected_and_counted(cases):
    for case in cases:
        ids = np.unique(case.instances)
        np.testing.assert_array_equal(ids, np.arange(case.count + 1))
        for label in range(1, case.count + 1):
            _, parts = ndimage.label(case.instances == label)  # 6-connectivity
            assert parts == 1


def test_points_are_centres_of_mass(cases):
    for case in cases:
        expected = ndimage.center_of_mass(
            case.instances > 0, case.instances, range(1, case.count + 1)
        )
        np.testing.assert_allclose(case.points, np.asarray(expected).reshape(-1, 3))
        assert len(case.points) == case.count


def test_instance_centres_by_hand():
    labels = np.zeros((3, 4), dtype=int)
    labels[0, :2] = 2
    labels[2, 3] = 1
    np.testing.assert_array_equal(instance_centres(labels), [[2.0, 3.0], [0.0, 0.5]])
    assert instance_centres(np.zeros((2, 2, 2), int)).shape == (0, 3)


def test_all_size_strata_occur(cases):
    sizes = np.concatenate([np.bincount(c.instances.ravel())[1:] for c in cases])
    assert sizes.min() >= SIZE_STRATA[0][0] and sizes.max() <= SIZE_STRATA[-1][1]
    for low, high in SIZE_STRATA:
        assert np.sum((sizes >= low) & (sizes <= high)) >= 2


def face_touching_pairs(instances):
    pairs = set()
    for axis in range(instances.ndim):
        a = np.moveaxis(instances, axis, 0)[:-1].ravel()
        b = np.moveaxis(instances, axis, 0)[1:].ravel()
        touching = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[touching], b[touching], strict=True)}
    return pairs


def test_some_lesions_touch_but_not_all(cases):
    pairs = [face_touching_pairs(c.instances) for c in cases]
    assert sum(len(p) for p in pairs) >= 2
    binary_parts = [ndimage.label(c.instances > 0)[1] for c in cases]
    assert sum(binary_parts) < sum(c.count for c in cases)
    assert sum(binary_parts) > sum(c.count for c in cases) / 2


def test_lesions_stay_away_from_the_border(cases):
    for case in cases:
        inner = np.zeros(case.instances.shape, bool)
        inner[3:-3, 3:-3, 3:-3] = True
        assert not np.any((case.instances > 0) & ~inner)


def test_lesions_bright_in_flair_dark_in_t1_but_not_thresholdable(cases):
    flair_contrast, t1_contrast = [], []
    for case in cases:
        for label in range(1, case.count + 1):
            lesion = case.instances == label
            ring = ndimage.binary_dilation(lesion, iterations=3) & (case.instances == 0)
            ring &= ~ndimage.binary_dilation(case.instances > 0)
            flair_contrast.append(case.image[0][lesion].mean() - case.image[0][ring].mean())
            t1_contrast.append(case.image[1][lesion].mean() - case.image[1][ring].mean())
    assert np.mean(flair_contrast) > 0.1 and np.mean(np.greater(flair_contrast, 0)) > 0.9
    assert np.mean(t1_contrast) < -0.05
    # Scalp and grey matter reach lesion intensities in FLAIR: a threshold at the median
    # lesion voxel keeps more background voxels than lesion voxels.
    case = cases[0]
    lesion = case.instances > 0
    threshold = np.median(case.image[0][lesion])
    bright = case.image[0] > threshold
    assert np.sum(bright & ~lesion) > np.sum(bright & lesion)


def test_requested_lesion_count_and_empty_case():
    assert make_phantom_case(7, n_lesions=12).count == 12
    empty = make_phantom_case(7, n_lesions=0)
    assert empty.count == 0 and empty.points.shape == (0, 3) and not empty.instances.any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (8, 64, 64)}, "shape"),
        ({"shape": (64, 64)}, "shape"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"n_lesions": -1}, "n_lesions"),
        ({"channels": ("flair", "dwi")}, "channels"),
        ({"shape": (16, 16, 16), "n_lesions": 200}, "n_lesions"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_phantom_case(0, **kwargs)


def test_mni152_background_has_real_anatomy():
    pytest.importorskip("nilearn")
    case = make_phantom_case(5, background="mni152", n_lesions=6)
    again = make_phantom_case(5, background="mni152", n_lesions=6)
    np.testing.assert_array_equal(case.image, again.image)
    assert case.count == 6 and case.image.shape == (2, 32, 64, 64)
    expected = ndimage.center_of_mass(case.instances > 0, case.instances, range(1, 7))
    np.testing.assert_allclose(case.points, expected)
    lesion = case.instances > 0
    ring = ndimage.binary_dilation(lesion, iterations=2) & ~lesion
    assert case.image[0][lesion].mean() > case.image[0][ring].mean() + 0.1
    # The template's brain is not an ellipsoid: it differs from the synthetic head.
    synthetic = make_phantom_case(5, n_lesions=6)
    assert np.mean((case.image[1] > 0.3) != (synthetic.image[1] > 0.3)) > 0.05


def test_mni152_without_nilearn_or_unknown_background_is_a_one_line_error(monkeypatch):
    from weaklesion.data import phantom

    monkeypatch.setattr(phantom.importlib.util, "find_spec", lambda name: None)
    phantom._mni152_maps.cache_clear()
    with pytest.raises(ValueError, match=r"^background: 'mni152' needs nilearn, which is not"):
        make_phantom_case(0, background="mni152")
    phantom._mni152_maps.cache_clear()
    with pytest.raises(ValueError, match="background: got 'mri'"):
        make_phantom_case(0, background="mri")
