import pytest
import timm
import torch

from engine.models.mae import MaskedAutoencoder, sincos_2d


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return MaskedAutoencoder("vit_tiny_patch16_224", img_size=32, patch_size=4, decoder_dim=64, decoder_depth=1,
                             depth=2)


def test_patchify_round_trips(mae):
    images = torch.randn(2, 3, 32, 32)
    patches = mae.patchify(images)
    assert patches.shape == (2, 64, 48)
    assert torch.equal(mae.unpatchify(patches), images)


def test_masking_keeps_a_quarter_per_sample(mae):
    x = torch.arange(2 * 64 * 3, dtype=torch.float).reshape(2, 64, 3)
    kept, mask, ids_restore = mae.random_masking(x, 0.75, torch.Generator().manual_seed(0))
    assert kept.shape == (2, 16, 3) and mask.sum(1).tolist() == [48, 48]
    assert not torch.equal(mask[0], mask[1])  # per-sample masks
    for b in range(2):  # the kept tokens are exactly the unmasked positions
        assert sorted(kept[b, :, 0].div(3).long().remainder(64).tolist()) == \
            sorted((mask[b] == 0).nonzero().flatten().tolist())
    assert torch.equal(ids_restore.argsort(1).argsort(1), ids_restore)


def test_positions_are_fixed_sincos(mae):
    pos = mae.encoder.pos_embed
    assert not pos.requires_grad
    assert torch.allclose(pos, sincos_2d(mae.encoder.embed_dim, 8, cls_token=True))


def test_loss_counts_only_masked_patches_and_trains(mae):
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    loss, pred, mask = mae(images, 0.75, torch.Generator().manual_seed(1))
    assert pred.shape == (4, 64, 48) and torch.isfinite(loss)
    target = mae.patchify(images)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    perfect = target * mask.unsqueeze(-1) + (pred.detach() + 5) * (1 - mask.unsqueeze(-1))
    assert mae.forward_loss(images, perfect, mask).item() == pytest.approx(0, abs=1e-6)
    loss.backward()
    assert mae.encoder.blocks[0].attn.qkv.weight.grad is not None and mae.encoder.pos_embed.grad is None
    mae.zero_grad()


def test_encoder_weights_load_into_a_timm_classifier(mae):
    classifier = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                                   num_classes=7, depth=2)
    missing, unexpected = classifier.load_state_dict(mae.encoder_state_dict(), strict=False)
    assert set(missing) == {"head.weight", "head.bias"} and not unexpected
    assert classifier(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_reconstruction_keeps_the_visible_patches(mae):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    out = mae.reconstruct(images, 0.75, seed=3)
    _, mask, _ = mae.forward_encoder(images, 0.75, torch.Generator().manual_seed(3))
    visible = (mask == 0).unsqueeze(-1)
    assert torch.allclose(mae.patchify(out) * visible, mae.patchify(images) * visible, atol=1e-6)
