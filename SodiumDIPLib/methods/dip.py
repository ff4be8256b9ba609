"""``dip``: plain Deep Image Prior (noise input, no guidance, no bias field, least squares).

The baseline DIP-Fusion must beat. Same network code and loop as ``dipfusion`` with every extra term off, so
the comparison isolates what guidance, bias field and fidelity add. Presets use the same small network as
DIP-Fusion (the original paper's 128-channel net is ``original`` in SodiumDIPLib.apps.benchmark's speed mode).
"""

from __future__ import annotations

from SodiumDIPLib.dip.loop import run_dip
from SodiumDIPLib.methods.base import Method, register
from SodiumDIPLib.methods.dipfusion import COMMON, classical_pilots

PLAIN = dict(COMMON, proton_input=False, fidelity="gaussian", weight_dtv=0.0, kspace_weight_dtv=0.0, weight_gc=0.0,
             bias_degree=0, sodium_guide="none", w_na=0.0)

PRESETS = {
    "fast": dict(PLAIN, iterations=200),
    "balanced": dict(PLAIN, iterations=400),
    "quality": dict(PLAIN, channels="32,64,64,128", skip_channels="4,4,4,4", iterations=800, lr=0.005,
                    precision="fp32"),
}


def run(problem, params, ctx):
    return run_dip(problem, params, ctx, "dip", pilots=classical_pilots())


register(Method(name="dip", description="plain Deep Image Prior (no guidance, no bias field)", run=run,
                presets=PRESETS, supports_kspace=True, needs_proton=False))
