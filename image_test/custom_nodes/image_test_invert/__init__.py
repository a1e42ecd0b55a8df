"""A custom node for the image test: inverts an image. Its requirement (numpy) is installed by the Dockerfile."""

import numpy


class ImageTestInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"
    CATEGORY = "image test"

    def invert(self, images):
        assert numpy.isfinite(images.cpu().numpy()).all()
        return (1.0 - images,)


NODE_CLASS_MAPPINGS = {"ImageTestInvert": ImageTestInvert}
