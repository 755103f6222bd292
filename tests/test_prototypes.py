import numpy as np
import pytest
import torch

from curator.data import DataError
from curator.prototypes import class_prototypes, encode_class, nearest_to_prototypes


def test_prototypes_are_deterministic_and_ordered_by_cluster_size(mnist, tiny_generator):
    latents = tiny_generator.encode(mnist.train.of_class(3))
    a, members_a = class_prototypes(latents, 5, seed=7)
    b, members_b = class_prototypes(latents, 5, seed=7)
    assert torch.equal(a, b) and np.array_equal(members_a, members_b)
    assert a.shape == (5, 1, 28, 28)
    sizes = np.bincount(members_a, minlength=5)
    assert (np.diff(sizes) <= 0).all()
    # each centre is the mean of its members
    torch.testing.assert_close(a[0], latents[torch.from_numpy(members_a == 0)].mean(0), atol=1e-4, rtol=0)
    c, _ = class_prototypes(latents, 5, seed=8)
    assert not torch.equal(a, c)


def test_ipc_larger_than_class_is_an_error_naming_the_class():
    with pytest.raises(DataError, match=r"class 'x' has 3 training images, fewer than IPC = 4"):
        class_prototypes(torch.zeros(3, 1, 4, 4), 4, class_name="x")


def test_nearest_real_images_are_distinct():
    latents = torch.tensor([[0.0], [0.1], [5.0], [5.1]]).view(4, 1, 1, 1)
    centres = torch.tensor([[0.0], [0.05]]).view(2, 1, 1, 1)
    assert sorted(nearest_to_prototypes(latents, centres).tolist()) == [0, 1]


@pytest.mark.parametrize("batch_size", [1, 7, 256, 1000])
def test_encode_class_streams_the_class_and_equals_encoding_it_whole(mnist, tiny_generator, batch_size):
    images = mnist.train.subset(np.arange(0, 4000, 3))  # 1334 rows, about 133 of class 3
    streamed = encode_class(tiny_generator, images, 3, batch_size)
    assert torch.equal(streamed, tiny_generator.encode(images.of_class(3)))


def test_encode_class_reads_one_batch_at_a_time(mnist, tiny_generator):
    seen = []

    class Recording:
        def encode(self, images):
            seen.append(len(images))
            return tiny_generator.encode(images)

    latents = encode_class(Recording(), mnist.train, 5, batch_size=150)
    assert seen == [150, 150, 100] and len(latents) == 400
    assert tuple(encode_class(tiny_generator, mnist.train, 11).shape) == (0, 1, 28, 28)  # no such class
