"""Small shared helpers below every stage: numerics, device choice, output guards, the D4 group, paths."""
