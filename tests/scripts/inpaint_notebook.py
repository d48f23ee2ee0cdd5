# The official inpaint notebook's code, cell by cell; only the imports differ (glide_text2im ->
# glidekit.compat) and IPython's display is a stand-in that saves the picture.
# Test-only hooks: GLIDEKIT_NOTEBOOK_OPTIONS (JSON) shrinks both models to fixture size (the
# notebook's literal 64 and 256 become the fixtures' sizes, _S64 and _S256), and
# GLIDEKIT_NOTEBOOK_OUT names the folder the pictures go to. 'grass.png' is read from the
# working directory, as in the notebook.
import json
import os
from typing import Tuple  # noqa: UP035  (the notebook's own spelling)

import numpy as np
import torch as th
import torch.nn.functional as F
from PIL import Image

from glidekit.compat.download import load_checkpoint
from glidekit.compat.model_creation import (
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    model_and_diffusion_defaults_upsampler,
)

_tiny = json.loads(os.environ.get("GLIDEKIT_NOTEBOOK_OPTIONS", "{}"))
_out = os.environ.get("GLIDEKIT_NOTEBOOK_OUT", ".")
_S64 = _tiny.get("base", {}).get("image_size", 64)
_S256 = _tiny.get("upsample", {}).get("image_size", 256)
_shown = []


def display(image):
    path = os.path.join(_out, f"shown_{len(_shown)}.png")
    image.save(path)
    _shown.append(path)


# This notebook supports both CPU and GPU.
# On CPU, generating one sample may take on the order of 20 minutes.
# On a GPU, it should be under a minute.

has_cuda = th.cuda.is_available()
device = th.device("cpu" if not has_cuda else "cuda")

# Create base model.
options = model_and_diffusion_defaults()
options.update(_tiny.get("base", {}))
options["inpaint"] = True
options["use_fp16"] = has_cuda
options["timestep_respacing"] = "100"  # use 100 diffusion steps for fast sampling
model, diffusion = create_model_and_diffusion(**options)
model.eval()
if has_cuda:
    model.convert_to_fp16()
model.to(device)
model.load_state_dict(load_checkpoint("base-inpaint", device))
print("total base parameters", sum(x.numel() for x in model.parameters()))

# Create upsampler model.
options_up = model_and_diffusion_defaults_upsampler()
options_up.update(_tiny.get("upsample", {}))
options_up["inpaint"] = True
options_up["use_fp16"] = has_cuda
options_up["timestep_respacing"] = "fast27"  # use 27 diffusion steps for very fast sampling
model_up, diffusion_up = create_model_and_diffusion(**options_up)
model_up.eval()
if has_cuda:
    model_up.convert_to_fp16()
model_up.to(device)
model_up.load_state_dict(load_checkpoint("upsample-inpaint", device))
print("total upsampler parameters", sum(x.numel() for x in model_up.parameters()))


def show_images(batch: th.Tensor):
    """Display a batch of images inline."""
    scaled = ((batch + 1) * 127.5).round().clamp(0, 255).to(th.uint8).cpu()
    reshaped = scaled.permute(2, 0, 3, 1).reshape([batch.shape[2], -1, 3])
    display(Image.fromarray(reshaped.numpy()))


def read_image(path: str, size: int = 256) -> Tuple[th.Tensor, th.Tensor]:  # noqa: UP006
    pil_img = Image.open(path).convert("RGB")
    pil_img = pil_img.resize((size, size), resample=Image.BICUBIC)
    img = np.array(pil_img)
    return th.from_numpy(img)[None].permute(0, 3, 1, 2).float() / 127.5 - 1


# Sampling parameters
prompt = "a corgi in a field"
batch_size = 1
guidance_scale = 5.0

# Tune this parameter to control the sharpness of 256x256 images.
# A value of 1.0 is sharper, but sometimes results in grainy artifacts.
upsample_temp = 0.997

# Source image we are inpainting
source_image_256 = read_image("grass.png", size=_S256)
source_image_64 = read_image("grass.png", size=_S64)

# The mask should always be a boolean 64x64 mask, and then we
# can upsample it for the second stage.
source_mask_64 = th.ones_like(source_image_64)[:, :1]
source_mask_64[:, :, 20:] = 0
source_mask_256 = F.interpolate(source_mask_64, (_S256, _S256), mode="nearest")

# Visualize the image we are inpainting
show_images(source_image_256 * source_mask_256)

##############################
# Sample from the base model #
##############################

# Create the text tokens to feed to the model.
tokens = model.tokenizer.encode(prompt)
tokens, mask = model.tokenizer.padded_tokens_and_mask(tokens, options["text_ctx"])

# Create the classifier-free guidance tokens (empty)
full_batch_size = batch_size * 2
uncond_tokens, uncond_mask = model.tokenizer.padded_tokens_and_mask([], options["text_ctx"])

# Pack the tokens together into model kwargs.
model_kwargs = dict(
    tokens=th.tensor([tokens] * batch_size + [uncond_tokens] * batch_size, device=device),
    mask=th.tensor(
        [mask] * batch_size + [uncond_mask] * batch_size,
        dtype=th.bool,
        device=device,
    ),
    # Masked inpainting image
    inpaint_image=(source_image_64 * source_mask_64).repeat(full_batch_size, 1, 1, 1).to(device),
    inpaint_mask=source_mask_64.repeat(full_batch_size, 1, 1, 1).to(device),
)


# Create an classifier-free guidance sampling function
def model_fn(x_t, ts, **kwargs):
    half = x_t[: len(x_t) // 2]
    combined = th.cat([half, half], dim=0)
    model_out = model(combined, ts, **kwargs)
    eps, rest = model_out[:, :3], model_out[:, 3:]
    cond_eps, uncond_eps = th.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
    eps = th.cat([half_eps, half_eps], dim=0)
    return th.cat([eps, rest], dim=1)


def denoised_fn(x_start):
    # Force the model to have the exact right x_start predictions
    # for the part of the image which is known.
    return (
        x_start * (1 - model_kwargs["inpaint_mask"])
        + model_kwargs["inpaint_image"] * model_kwargs["inpaint_mask"]
    )


# Sample from the base model.
model.del_cache()
samples = diffusion.p_sample_loop(
    model_fn,
    (full_batch_size, 3, options["image_size"], options["image_size"]),
    device=device,
    clip_denoised=True,
    progress=True,
    model_kwargs=model_kwargs,
    cond_fn=None,
    denoised_fn=denoised_fn,
)[:batch_size]
model.del_cache()

# Show the output
show_images(samples)

##############################
# Upsample the 64x64 samples #
##############################

tokens = model_up.tokenizer.encode(prompt)
tokens, mask = model_up.tokenizer.padded_tokens_and_mask(tokens, options_up["text_ctx"])

# Create the model conditioning dict.
model_kwargs = dict(
    # Low-res image to upsample.
    low_res=((samples + 1) * 127.5).round() / 127.5 - 1,
    # Text tokens
    tokens=th.tensor([tokens] * batch_size, device=device),
    mask=th.tensor(
        [mask] * batch_size,
        dtype=th.bool,
        device=device,
    ),
    # Masked inpainting image.
    inpaint_image=(source_image_256 * source_mask_256).repeat(batch_size, 1, 1, 1).to(device),
    inpaint_mask=source_mask_256.repeat(batch_size, 1, 1, 1).to(device),
)


def denoised_fn(x_start):  # noqa: F811
    # Force the model to have the exact right x_start predictions
    # for the part of the image which is known.
    return (
        x_start * (1 - model_kwargs["inpaint_mask"])
        + model_kwargs["inpaint_image"] * model_kwargs["inpaint_mask"]
    )


# Sample from the base model.
model_up.del_cache()
up_shape = (batch_size, 3, options_up["image_size"], options_up["image_size"])
up_samples = diffusion_up.p_sample_loop(
    model_up,
    up_shape,
    noise=th.randn(up_shape, device=device) * upsample_temp,
    device=device,
    clip_denoised=True,
    progress=True,
    model_kwargs=model_kwargs,
    cond_fn=None,
    denoised_fn=denoised_fn,
)[:batch_size]
model_up.del_cache()

# Show the output
show_images(up_samples)
