"""`losam convert` (issue 12): Meta's SAM / MedSAM .pth -> a base folder, the authors' PromptSAM / PromptDiNo .pth ->
a LoSAM adapter, and the restricted pickle reader.

The expected outputs come from independent implementations written here from segment-anything's and DINOv2's
published semantics (CHECKPOINTS.md, REFERENCE.md), on the original key names; transformers is not called for them.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

from losam_peft import LoSamPipeline, SamForSemanticSegmentation
from losam_peft.checkpoint_io import load_pth_state_dict
from losam_peft.cli import main as cli_main
from losam_peft.convert_reference import prompt_dino_state_dict_to_losam
from losam_peft.errors import CheckpointError

SPEC = dict(embed=32, depth=3, heads=2, patch=8, image=64, window=3, global_layers=(1,), neck=32)
DINO = dict(embed=32, depth=2, heads=2, patch=14, image=56)


def _rng(seed):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def norm(channels):
        return 1 + rnd(channels, scale=0.1), rnd(channels, scale=0.1)

    return rnd, norm


# -- independent implementations -------------------------------------------------------------------------------------
def _ln2d(x, weight, bias, eps=1e-6):
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def _sam_attention(x, p, heads):
    """segment-anything's Attention with decomposed relative positions on (B, H, W, C)."""
    b, h, w, c = x.shape
    qkv = F.linear(x, p["attn.qkv.weight"], p["attn.qkv.bias"]).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, h * w, -1).unbind(0)
    d = q.shape[-1]
    attn = (q * d**-0.5) @ k.transpose(-2, -1)
    r_h = p["attn.rel_pos_h"][(torch.arange(h)[:, None] - torch.arange(h)[None, :]) + (h - 1)]
    r_w = p["attn.rel_pos_w"][(torch.arange(w)[:, None] - torch.arange(w)[None, :]) + (w - 1)]
    r_q = q.reshape(b * heads, h, w, d)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, r_h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, r_w)
    attn = (attn.view(b * heads, h, w, h, w) + rel_h[..., None] + rel_w[:, :, :, None, :]).view(b * heads, h * w, -1)
    out = (attn.softmax(-1) @ v).view(b, heads, h, w, d).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
    return F.linear(out, p["attn.proj.weight"], p["attn.proj.bias"])


def _sam_block(x, p, heads, window):
    shortcut = x
    x = F.layer_norm(x, x.shape[-1:], p["norm1.weight"], p["norm1.bias"], 1e-6)
    if window:
        b, h, w, c = x.shape
        ph, pw = (window - h % window) % window, (window - w % window) % window
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)
        x = _sam_attention(x, p, heads)
        x = x.view(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        x = x[:, :h, :w]
    else:
        x = _sam_attention(x, p, heads)
    x = shortcut + x
    y = F.layer_norm(x, x.shape[-1:], p["norm2.weight"], p["norm2.bias"], 1e-6)
    return x + F.linear(F.gelu(F.linear(y, p["mlp.lin1.weight"], p["mlp.lin1.bias"])), p["mlp.lin2.weight"], p["mlp.lin2.bias"])


def _prompt(x, p):
    """prompt_learn on channels-first features."""
    y = F.gelu(_ln2d(F.conv2d(x, p["0.weight"], p["0.bias"]), p["1.weight"], p["1.bias"]))
    y = F.gelu(_ln2d(F.conv2d(y, p["3.weight"], None, padding=1, groups=y.shape[1]), p["4.weight"], p["4.bias"]))
    return F.gelu(_ln2d(F.conv2d(y, p["6.weight"], p["6.bias"]), p["7.weight"], p["7.bias"]))


def _sub(sd, prefix):
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _sam_encoder(sd, pixels, prefix="image_encoder.", block=""):
    """segment-anything's ImageEncoderViT forward (with PromptSAM's prompts when the keys have them): (B, 256, h, w)."""
    s = SPEC
    x = F.conv2d(pixels, sd[prefix + "patch_embed.proj.weight"], sd[prefix + "patch_embed.proj.bias"], stride=s["patch"])
    x = x.permute(0, 2, 3, 1) + sd[prefix + "pos_embed"]
    for i in range(s["depth"]):
        prompt = _sub(sd, f"{prefix}blocks.{i}.prompt_learn.")
        if prompt:
            x = x + _prompt(x.permute(0, 3, 1, 2), prompt).permute(0, 2, 3, 1)
        window = 0 if i in s["global_layers"] else s["window"]
        x = _sam_block(x, _sub(sd, f"{prefix}blocks.{i}.{block}"), s["heads"], window)
    x = _ln2d(F.conv2d(x.permute(0, 3, 1, 2), sd[prefix + "neck.0.weight"]), sd[prefix + "neck.1.weight"], sd[prefix + "neck.1.bias"])
    return _ln2d(F.conv2d(x, sd[prefix + "neck.2.weight"], padding=1), sd[prefix + "neck.3.weight"], sd[prefix + "neck.3.bias"])


def _head(sd, x, size, dino=False):
    """The reference's head: [(bilinear x2 for PromptDiNo,) transposed conv, LayerNorm2d, GELU] x2, ms_conv, BN, GELU,
    the classifier, bilinear upsampling to the input size with align_corners=True."""
    for stage in ("up_1", "up_2"):
        if dino:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = F.conv_transpose2d(x, sd[f"up_conv.{stage}.0.weight"], sd[f"up_conv.{stage}.0.bias"], stride=2)
        x = F.gelu(_ln2d(x, sd[f"up_conv.{stage}.1.weight"], sd[f"up_conv.{stage}.1.bias"]))
    q = x.shape[1] // 4
    parts = [F.conv2d(x[:, :q], sd["ms_conv.convs.0.weight"], sd["ms_conv.convs.0.bias"])]
    for i in (1, 2, 3):
        w, b = sd[f"ms_conv.convs.{i}.weight"], sd[f"ms_conv.convs.{i}.bias"]
        parts.append(F.conv2d(x[:, i * q : (i + 1) * q], w, b, padding=i, dilation=i, groups=q))
    x = torch.cat(parts, 1)
    x = F.batch_norm(x, sd["ms_conv.norm.running_mean"], sd["ms_conv.norm.running_var"], sd["ms_conv.norm.weight"],
                     sd["ms_conv.norm.bias"], training=False, eps=1e-5)  # fmt: skip
    name = "out_conv" if dino else "decoder.0"
    x = F.conv2d(F.gelu(x), sd[f"{name}.weight"], sd.get(f"{name}.bias"))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _dino_forward(sd, pixels):
    """PromptDiNo: DINOv2 (timm-style blocks with layer scale), the prompt on the patch tokens only, the final-norm
    patch tokens as features, the PromptDiNo head."""
    s, e = DINO, "encoder."
    c, heads = s["embed"], s["heads"]
    x = F.conv2d(pixels, sd[e + "patch_embed.proj.weight"], sd[e + "patch_embed.proj.bias"], stride=s["patch"])
    b, _, gh, gw = x.shape
    x = torch.cat([sd[e + "cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], 1) + sd[e + "pos_embed"]
    for i in range(s["depth"]):
        p = _sub(sd, f"{e}blocks.{i}.block.")
        patches = x[:, 1:].transpose(1, 2).reshape(b, c, gh, gw)
        patches = patches + _prompt(patches, _sub(sd, f"{e}blocks.{i}.prompt_learn."))
        x = torch.cat([x[:, :1], patches.flatten(2).transpose(1, 2)], 1)
        y = F.layer_norm(x, (c,), p["norm1.weight"], p["norm1.bias"], 1e-6)
        qkv = F.linear(y, p["attn.qkv.weight"], p["attn.qkv.bias"]).reshape(b, -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] * (c // heads) ** -0.5) @ qkv[1].transpose(-2, -1)).softmax(-1)
        y = F.linear((attn @ qkv[2]).transpose(1, 2).reshape(b, -1, c), p["attn.proj.weight"], p["attn.proj.bias"])
        x = x + p["ls1.gamma"] * y
        y = F.layer_norm(x, (c,), p["norm2.weight"], p["norm2.bias"], 1e-6)
        y = F.linear(F.gelu(F.linear(y, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"])
        x = x + p["ls2.gamma"] * y
    x = F.layer_norm(x, (c,), sd[e + "norm.weight"], sd[e + "norm.bias"], 1e-6)
    features = x[:, 1:].transpose(1, 2).reshape(b, c, gh, gw)
    return _head(sd, features, pixels.shape[-2:], dino=True)


# -- random state dicts with the original key names ------------------------------------------------------------------
def _sam_encoder_weights(seed=0, prefix="image_encoder.", block=""):
    rnd, norm = _rng(seed)
    s = SPEC
    c, d, n, grid = s["embed"], s["embed"] // s["heads"], s["neck"], s["image"] // s["patch"]
    sd = {prefix + "pos_embed": rnd(1, grid, grid, c), prefix + "patch_embed.proj.weight": rnd(c, 3, s["patch"], s["patch"], scale=0.05),
          prefix + "patch_embed.proj.bias": rnd(c)}  # fmt: skip
    for i in range(s["depth"]):
        b = f"{prefix}blocks.{i}.{block}"
        size = grid if i in s["global_layers"] else s["window"]
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = norm(c)
        sd[b + "attn.rel_pos_h"], sd[b + "attn.rel_pos_w"] = rnd(2 * size - 1, d, scale=0.5), rnd(2 * size - 1, d, scale=0.5)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = rnd(3 * c, c), rnd(3 * c)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = rnd(c, c), rnd(c)
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = norm(c)
        sd[b + "mlp.lin1.weight"], sd[b + "mlp.lin1.bias"] = rnd(4 * c, c), rnd(4 * c)
        sd[b + "mlp.lin2.weight"], sd[b + "mlp.lin2.bias"] = rnd(c, 4 * c, scale=0.1), rnd(c)
    sd[prefix + "neck.0.weight"] = rnd(n, c, 1, 1)
    sd[prefix + "neck.1.weight"], sd[prefix + "neck.1.bias"] = norm(n)
    sd[prefix + "neck.2.weight"] = rnd(n, n, 3, 3, scale=0.1)
    sd[prefix + "neck.3.weight"], sd[prefix + "neck.3.bias"] = norm(n)
    return sd


def _meta_sam(seed=0):
    """A full SAM state dict as Meta saves it: image encoder, prompt encoder and mask decoder."""
    sd = _sam_encoder_weights(seed)
    sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 16)
    sd["mask_decoder.iou_token.weight"] = torch.randn(1, 32)
    return sd


def _prompts_and_head(sd, prefix, depth, c, classes, seed, dino=False, r=4):
    rnd, norm = _rng(seed + 100)
    for i in range(depth):
        b = f"{prefix}blocks.{i}.prompt_learn."
        sd[b + "0.weight"], sd[b + "0.bias"] = rnd(c // r, c, 1, 1), rnd(c // r)
        sd[b + "1.weight"], sd[b + "1.bias"] = norm(c // r)
        sd[b + "3.weight"] = rnd(c // r, 1, 3, 3)
        sd[b + "4.weight"], sd[b + "4.bias"] = norm(c // r)
        sd[b + "6.weight"], sd[b + "6.bias"] = rnd(c, c // r, 1, 1), rnd(c)
        sd[b + "7.weight"], sd[b + "7.bias"] = norm(c)
    n = c if dino else SPEC["neck"]
    mid, low = n // 2, n // 4
    sd["up_conv.up_1.0.weight"], sd["up_conv.up_1.0.bias"] = rnd(n, mid, 2, 2), rnd(mid)
    sd["up_conv.up_1.1.weight"], sd["up_conv.up_1.1.bias"] = norm(mid)
    sd["up_conv.up_2.0.weight"], sd["up_conv.up_2.0.bias"] = rnd(mid, low, 2, 2), rnd(low)
    sd["up_conv.up_2.1.weight"], sd["up_conv.up_2.1.bias"] = norm(low)
    q = low // 4
    sd["ms_conv.convs.0.weight"], sd["ms_conv.convs.0.bias"] = rnd(q, q, 1, 1), rnd(q)
    for i in (1, 2, 3):
        sd[f"ms_conv.convs.{i}.weight"], sd[f"ms_conv.convs.{i}.bias"] = rnd(q, 1, 3, 3), rnd(q)
    sd["ms_conv.norm.weight"], sd["ms_conv.norm.bias"] = norm(low)
    sd["ms_conv.norm.running_mean"], sd["ms_conv.norm.running_var"] = rnd(low, scale=0.1), 0.5 + rnd(low).abs()
    sd["ms_conv.norm.num_batches_tracked"] = torch.tensor(10)
    name = "out_conv" if dino else "decoder.0"
    sd[f"{name}.weight"], sd[f"{name}.bias"] = rnd(classes, low, 1, 1), rnd(classes)
    return sd


def _prompt_sam(seed=0, classes=3):
    sd = _sam_encoder_weights(seed, prefix="sam.image_encoder.", block="block.")
    return _prompts_and_head(sd, "sam.image_encoder.", SPEC["depth"], SPEC["embed"], classes, seed)


def _prompt_dino(seed=0, classes=2):
    rnd, norm = _rng(seed)
    s, e = DINO, "encoder."
    c, grid = s["embed"], s["image"] // s["patch"]
    sd = {e + "cls_token": rnd(1, 1, c), e + "pos_embed": rnd(1, grid * grid + 1, c), e + "mask_token": torch.zeros(1, c),
          e + "patch_embed.proj.weight": rnd(c, 3, s["patch"], s["patch"], scale=0.05), e + "patch_embed.proj.bias": rnd(c)}  # fmt: skip
    for i in range(s["depth"]):
        b = f"{e}blocks.{i}.block."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = norm(c)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = rnd(3 * c, c), rnd(3 * c)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = rnd(c, c), rnd(c)
        sd[b + "ls1.gamma"], sd[b + "ls2.gamma"] = 0.5 + rnd(c, scale=0.1), 0.5 + rnd(c, scale=0.1)
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = norm(c)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = rnd(4 * c, c), rnd(4 * c)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = rnd(c, 4 * c, scale=0.1), rnd(c)
    sd[e + "norm.weight"], sd[e + "norm.bias"] = norm(c)
    return _prompts_and_head(sd, e, s["depth"], c, classes, seed, dino=True)


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _pixels(n=2, size=64, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- sam-checkpoint ----------------------------------------------------------------------------------------------------
def test_sam_checkpoint_converts_to_a_base_whose_encoder_equals_sams_own_forward(tmp_path, capsys):
    sd = _meta_sam()
    torch.save(sd, tmp_path / "sam_tiny.pth")
    assert cli_main(["convert", "sam-checkpoint", str(tmp_path / "sam_tiny.pth"), str(tmp_path / "base")]) == 0
    assert "--base" in capsys.readouterr().out
    assert {"model.safetensors", "config.json"} <= {p.name for p in (tmp_path / "base").iterdir()}
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    # every dimension read from the shapes
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (32, 3, 2)
    assert (config["window_size"], config["global_attn_indexes"], config["image_size"]) == (3, [1], 64)
    assert (config["patch_size"], config["output_channels"], config["mlp_dim"]) == (8, 32, 128)
    model = SamForSemanticSegmentation.from_pretrained(tmp_path / "base")
    pixels = _pixels()
    with torch.no_grad():
        got = model.vision_encoder(pixels).last_hidden_state
        expected = _sam_encoder(sd, pixels)
    assert got.shape == expected.shape == (2, 32, 8, 8)
    assert _rel_err(got, expected) < 1e-4
    # refused: an existing folder without --overwrite, a checkpoint of another size than --model-type says
    assert cli_main(["convert", "sam-checkpoint", str(tmp_path / "sam_tiny.pth"), str(tmp_path / "base")]) == 2
    assert "exists already" in capsys.readouterr().err
    code = cli_main(["convert", "sam-checkpoint", str(tmp_path / "sam_tiny.pth"), str(tmp_path / "b2"), "--model-type", "vit_b"])
    assert code == 2 and "not a vit_b encoder: hidden_size 32 (a vit_b has 768)" in capsys.readouterr().err
    assert not (tmp_path / "b2" / "model.safetensors").exists()


def test_a_nested_state_dict_is_read_and_other_content_is_refused(tmp_path):
    sd = _meta_sam()
    torch.save({"model": sd, "epoch": 3}, tmp_path / "nested.pth")
    assert set(load_pth_state_dict(tmp_path / "nested.pth")) == set(sd)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list.pth: not a state dict of tensors \(the file holds a list\)"):
        load_pth_state_dict(tmp_path / "list.pth")
    torch.save({"a": 1}, tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match="entries that are not str -> tensor, e.g. 'a'"):
        load_pth_state_dict(tmp_path / "ints.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pth: refused"):
        load_pth_state_dict(tmp_path / "garbage.pth")
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        torch.save({"x.weight": torch.zeros(1)}, tmp_path / "other.pth")
        from losam_peft.convert_sam import convert_sam_checkpoint

        convert_sam_checkpoint(tmp_path / "other.pth", tmp_path / "out")


class _WritesAFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code a malicious pickle would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("command", ["sam-checkpoint", "reference-adapter"])
def test_a_pickle_holding_an_arbitrary_object_is_refused_without_running_it(tmp_path, capsys, command):
    marker = tmp_path / "marker"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "payload": _WritesAFile(marker)}, tmp_path / "evil.pth")
    assert not marker.exists()
    argv = ["convert", command, str(tmp_path / "evil.pth"), str(tmp_path / "out")]
    if command == "reference-adapter":
        argv += ["--base", str(tmp_path / "nowhere")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "evil.pth: refused" in err and "weights_only" in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


# -- reference-adapter -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sam_base(tmp_path_factory):
    """The PromptSAM file's frozen encoder as Meta's .pth, converted to a base folder."""
    root = tmp_path_factory.mktemp("sam_base")
    encoder = {k.replace("sam.", "", 1).replace(".block.", "."): v for k, v in _prompt_sam().items()
               if k.startswith("sam.image_encoder.") and ".prompt_learn." not in k}  # fmt: skip
    torch.save(encoder, root / "sam.pth")
    assert cli_main(["convert", "sam-checkpoint", str(root / "sam.pth"), str(root / "base")]) == 0
    return root / "base"


def test_prompt_sam_becomes_an_adapter_whose_pipeline_logits_equal_the_reference(tmp_path, sam_base, capsys):
    sd = _prompt_sam()
    torch.save(sd, tmp_path / "promptsam.pth")
    argv = ["convert", "reference-adapter", str(tmp_path / "promptsam.pth"), str(tmp_path / "adapter"),
            "--base", str(sam_base), "--labels", "background,artery,vein"]  # fmt: skip
    assert cli_main(argv) == 0, capsys.readouterr().err
    names = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "preprocessor_config.json", "README.md"} <= names
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["align_corners"] is True and adapter_config["reduction"] == 4
    assert adapter_config["id2label"] == {"0": "background", "1": "artery", "2": "vein"}
    processor = json.loads((tmp_path / "adapter" / "preprocessor_config.json").read_text())
    assert processor["mode"] == "paper" and processor["image_mean"] == [0.5] * 3 and processor["image_std"] == [0.5] * 3
    pipe = LoSamPipeline.from_pretrained(tmp_path / "adapter", device="cpu", dtype=torch.float32)
    pixels = _pixels()
    with torch.no_grad():
        expected = _head(sd, _sam_encoder(sd, pixels, prefix="sam.image_encoder.", block="block."), (64, 64))
    logits = pipe.forward_logits(pixels)
    assert logits.shape == expected.shape == (2, 3, 64, 64)
    assert _rel_err(logits, expected) < 1e-4


def test_an_encoder_that_differs_from_the_base_is_named(tmp_path, sam_base, capsys):
    sd = _prompt_sam()
    sd["sam.image_encoder.blocks.2.block.mlp.lin1.bias"] = sd["sam.image_encoder.blocks.2.block.mlp.lin1.bias"] + 0.25
    sd["sam.image_encoder.blocks.1.block.norm2.weight"] = sd["sam.image_encoder.blocks.1.block.norm2.weight"] + 0.01
    torch.save(sd, tmp_path / "other.pth")
    argv = ["convert", "reference-adapter", str(tmp_path / "other.pth"), str(tmp_path / "adapter"), "--base", str(sam_base)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "first at vision_encoder.layers.1.layer_norm2.weight" in err
    assert "largest difference 0.25 at vision_encoder.layers.2.mlp.lin1.bias" in err
    assert not (tmp_path / "adapter").exists()
    with pytest.warns(UserWarning, match="converting anyway"):
        assert cli_main(argv + ["--allow-encoder-mismatch"]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    # the wrong number of labels, and a PromptSAM file on a DINOv2 base, are refused
    assert cli_main(argv[:-2] + ["--base", str(sam_base), "--labels", "a,b", "--overwrite"]) == 2
    assert "the head has 3 classes, but 2 labels were given" in capsys.readouterr().err


def test_prompt_dino_becomes_an_adapter_whose_pipeline_logits_equal_the_reference(tmp_path, capsys):
    sd = _prompt_dino()
    torch.save(sd, tmp_path / "promptdino.pth")
    # the base: a plain transformers Dinov2Model folder holding the file's frozen encoder
    encoder_state, _ = prompt_dino_state_dict_to_losam(sd)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)
    base = Dinov2Model(config)
    base.load_state_dict({k[len("dinov2.") :]: v for k, v in encoder_state.items()}, strict=True)
    base.save_pretrained(tmp_path / "dinov2")
    argv = ["convert", "reference-adapter", str(tmp_path / "promptdino.pth"), str(tmp_path / "adapter"),
            "--base", str(tmp_path / "dinov2")]  # fmt: skip
    assert cli_main(argv) == 0, capsys.readouterr().err
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["image_size"] == 56 and adapter_config["encoder_num_layers"] == 2
    assert adapter_config["id2label"] == {"0": "background", "1": "class_1"}
    pipe = LoSamPipeline.from_pretrained(tmp_path / "adapter", device="cpu", dtype=torch.float32)
    pixels = _pixels(size=56)
    with torch.no_grad():
        expected = _dino_forward(sd, pixels)
    logits = pipe.forward_logits(pixels)
    assert logits.shape == expected.shape == (2, 2, 56, 56)
    assert _rel_err(logits, expected) < 1e-4
    # a PromptDiNo file on a SAM base is refused, naming both
    tiny = tmp_path / "sam"
    from helpers import tiny_model

    tiny_model().save_pretrained(tiny)
    assert cli_main(argv[:-1] + [str(tiny), "--overwrite"]) == 2
    assert "is a PromptDiNo (DINOv2) checkpoint, but the base" in capsys.readouterr().err


def test_convert_help_documents_both_conversions(capsys):
    with pytest.raises(SystemExit):
        cli_main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "sam-checkpoint" in out and "reference-adapter" in out and "weights_only=True" in out
