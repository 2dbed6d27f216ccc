"""Diagnostic: an off-centre hot spot per class (maps zeroed inside a central disc) and its causal
dependence, at each nomask run of one world (shortcut or clean)."""
import sys, math, json
from pathlib import Path
sys.path.insert(0, str(Path.cwd() / "benchmarks"))
import torch
import bench_detection as bd
import detection_worlds as dw
from gradcam_callback import alarms, evidence as E, metrics as M
torch.set_num_threads(1)
RADII = (0.3, 0.45)
ROWS = []
orig = alarms.ShortcutMonitor.analyze
def analyze(self, **kw):
    out = orig(self, **kw)
    if kw.get("object_masks") is not None or kw.get("baseline") or kw.get("score_fn") is None:
        return out
    with torch.no_grad():
        x = E.prepare(self, kw["maps"], kw["images"], kw["targets"], kw.get("logits"), None, None, kw.get("map_size"))
        learned = E.learned_classes(x, self.learned_share)
        gh, gw = x.maps.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(gh) - (gh - 1) / 2, torch.arange(gw) - (gw - 1) / 2, indexing="ij")
        r = (yy**2 + xx**2).sqrt() / (math.hypot(gh - 1, gw - 1) / 2)
        base = x.logits if x.logits is not None else kw["score_fn"](x.images).float()
        for rad in RADII:
            m = x.maps * (r >= rad).float()
            hot = M.anchored_hotspot(m, x.images_grid, x.groups, num_groups=len(x.classes), frac=self.hotspot_frac, min_group=2, shift=x.shift)
            foot = E.M.dilate(E._upsample_mask(hot.footprint, tuple(x.images.shape[-2:])), 1)
            er = M.erase(x.images, foot, fill_size=(gh, gw))
            after = kw["score_fn"](er).float()
            eff = M.erasure_effect_from_logits(base, after, x.targets)
            dep = (eff.evidence_drop >= 0.5).float()
            for g, c in enumerate(x.classes):
                sel = x.groups == g
                ok = ~torch.isnan(eff.evidence_drop[sel])
                ROWS.append(dict(epoch=kw["epoch"], rad=rad, cls=c, learned=bool(learned[g]),
                    cons=round(float(hot.consistency[g]), 2), off=round(float(hot.offset[g]), 2),
                    stab=round(float(hot.stability[g]), 2), area=round(float(hot.group_footprint[g].float().mean()), 3),
                    n=int(ok.sum()), dep=round(float(dep[sel][ok].mean()) if ok.any() else float('nan'), 2),
                    ev=round(float(eff.evidence_drop[sel][ok].mean()) if ok.any() else float('nan'), 2),
                    full_cons=None))
    return out
alarms.ShortcutMonitor.analyze = analyze
name, case = sys.argv[1], sys.argv[2]
spec = dw.WORLDS[name]
world = dw.make_world(spec, shortcut=(case == "shortcut"), seed=0)
records, cbs, secs = bd.fit_world(world, spec.epochs)
print(name, case, "truth", [(r["epoch"], round(r["acc_present"], 2), round(r["acc_swapped"], 2)) for r in records], "group", dw.shortcut_classes(spec))
print("nomask flags", [(f.epoch, str(f.kind), tuple(f.classes)) for f in cbs["nomask"].flags if str(f.kind) in ("artifact", "background")])
for row in ROWS:
    print(row)
json.dump(ROWS, open(f"/work/notes/s7/offc_{name}_{case}.json", "w"))
