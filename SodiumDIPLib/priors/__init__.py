"""Image priors built from guide images: direction fields, fused proton/sodium structure, dTV."""
