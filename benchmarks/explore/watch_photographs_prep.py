# Exploration script of docs/benchmarks-watch.md (writes/reads /tmp/wexp/acts.npz); not part of the product.
"""experiment: photos -> per-variant neuron values and layer means"""
import sys, io, os, glob, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import numpy as np, torch
from PIL import Image, ImageFilter
from audit.models import normalize
from sources import load_model
from audit.probe import ProbeSet
from audit.stats import layer_activations_full
from audit.taps import final_feature_layer
torch.set_num_threads(2)
def photo_like(path):
    im = Image.open(path).convert("RGBA")
    if min(im.size) < 120: return None
    a = np.asarray(im); op = a[..., 3] > 200
    if op.mean() < 0.15: return None
    rgb = a[..., :3][op]
    nu = len(np.unique((rgb[::5].astype(np.int64) @ np.array([65536, 256, 1]))))
    if nu < 1500: return None
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255)); bg.alpha_composite(im)
    box = im.getchannel("A").point(lambda v: 255 if v > 200 else 0).getbbox()
    return bg.convert("RGB").crop(box)
files = sorted(f for f in glob.glob("/usr/share/tuxpaint/stamps/**/*.png", recursive=True)
               if "/symbols/" not in f and "cartoon" not in f and "_mirror" not in f)
photos, names = [], []
for f in files:
    p = photo_like(f)
    if p is not None: photos.append(p); names.append(f.split("stamps/")[1])
import skimage
d = os.path.dirname(skimage.__file__) + "/data"
for n in ["astronaut.png","camera.png","chelsea.png","coffee.png","coins.png","hubble_deep_field.jpg","ihc.png","moon.png","motorcycle_left.png","motorcycle_right.png","retina.jpg","rocket.jpg","brick.png","grass.png","gravel.png"]:
    photos.append(Image.open(f"{d}/{n}").convert("RGB")); names.append("skimage/"+n)
print(len(photos), "photos", flush=True)
S = 224
def prep(im):
    w, h = im.size; s = S / min(w, h)
    im = im.resize((max(S, round(w * s)), max(S, round(h * s))), Image.BICUBIC)
    w, h = im.size; l, t = (w - S) // 2, (h - S) // 2
    return im.crop((l, t, l + S, t + S))
def jpeg(im, q):
    b = io.BytesIO(); im.save(b, format="JPEG", quality=q); b.seek(0); return Image.open(b).convert("RGB")
VARIANTS = {"clean": lambda im: im, "blur4": lambda im: im.filter(ImageFilter.GaussianBlur(4)),
            "swap": lambda im: Image.fromarray(np.ascontiguousarray(np.asarray(im)[..., ::-1])),
            "jpeg5": lambda im: jpeg(im, 5), "blur2": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
            "jpeg15": lambda im: jpeg(im, 15)}
model = load_model("efficientnet_lite0", "builtin:efficientnet_lite0")
final = final_feature_layer(model)
LAYERS = ["blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "conv_head", "classifier", final]
LAYERS = list(dict.fromkeys(LAYERS))
out = {"names": np.array(names)}
base = [prep(p) for p in photos]
for v, fn in VARIANTS.items():
    t0 = time.time()
    x = torch.stack([normalize(torch.from_numpy(np.asarray(fn(im), dtype=np.float32) / 255).permute(2, 0, 1)) for im in base])
    acts = layer_activations_full(model, ProbeSet(x, [str(i) for i in range(len(x))], "x"), LAYERS, use_cache=False)
    for l in LAYERS:
        out[f"{v}|{l}|mean"] = acts[l].mean; out[f"{v}|{l}|max"] = acts[l].max
    print(v, time.time() - t0, flush=True)
np.savez_compressed("/tmp/wexp/acts.npz", **out)
print(final)
