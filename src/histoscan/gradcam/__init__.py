"""Grad-CAM, shared by the stages that explain (explain, slide --explain, serve /v1/explain).

`cam` computes class-activation maps of a PyTorch classifier, `render` draws the one overlay figure and
`images` writes an explanation folder for fitted images. It sits below the stages and above the model seam:
stages never import each other, so what three of them share lives here.
"""
