import pytest
import torch

from lightning_accel.pruning.masks import magnitude_masks, n_m_mask


def test_global_masks_zero_exactly_the_smallest_weights() -> None:
    weights = {"a": torch.randn(8, 4), "b": torch.randn(16, 4, 3, 3) * 3}
    masks = magnitude_masks(weights, 0.8, "global")
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    kept = torch.cat(
        [
            w.abs().flatten()[m.flatten()]
            for w, m in zip(weights.values(), masks.values(), strict=True)
        ]
    )
    assert kept.numel() == flat.numel() - round(0.8 * flat.numel())
    assert kept.min() >= flat.sort().values[round(0.8 * flat.numel()) - 1]
    # Global ranking prunes the small-magnitude layer harder.
    assert (~masks["a"]).float().mean() > (~masks["b"]).float().mean()


def test_layer_masks_prune_each_layer_by_the_same_fraction() -> None:
    weights = {"a": torch.randn(10, 10), "b": torch.randn(20, 10) * 5}
    masks = magnitude_masks(weights, 0.3, "layer")
    assert int((~masks["a"]).sum()) == 30
    assert int((~masks["b"]).sum()) == 60


def test_global_masks_cut_exactly_n_even_with_tied_zeros() -> None:
    weights = {"a": torch.cat([torch.zeros(50), torch.randn(50)])}
    masks = magnitude_masks(weights, 0.3, "global")
    assert int((~masks["a"]).sum()) == 30


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_global_masks_cut_exactly_n_for_float64_and_bfloat16_weights(dtype) -> None:
    # float64 weights were compared against a float32 threshold: 0.4999 zeroed for 0.5.
    generator = torch.Generator().manual_seed(0)
    weights = {
        "a": torch.randn(64, 32, generator=generator, dtype=torch.float64).to(dtype),
        "b": torch.randn(128, 16, generator=generator, dtype=torch.float64).to(dtype),
    }
    masks = magnitude_masks(weights, 0.5, "global")
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * (64 * 32 + 128 * 16))


@pytest.mark.parametrize("shape", [(8, 16), (8, 16, 3, 3)])
def test_2_4_mask_keeps_two_largest_of_every_four_inputs(shape: tuple[int, ...]) -> None:
    weight = torch.randn(shape)
    mask = n_m_mask(weight)
    groups = mask.movedim(1, -1).reshape(-1, 4)
    assert (groups.sum(dim=1) == 2).all()
    values = weight.abs().movedim(1, -1).reshape(-1, 4)
    assert (
        values[groups].view(-1, 2).min(1).values >= values[~groups].view(-1, 2).max(1).values
    ).all()


@pytest.mark.bad_input("data")
def test_2_4_refuses_input_dim_not_multiple_of_four() -> None:
    with pytest.raises(ValueError, match="multiple of 4; got 6. Add this layer to `ignore`"):
        n_m_mask(torch.randn(8, 6))
