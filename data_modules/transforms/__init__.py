"""Image transforms: Koch affine augmentation, normalisation, PNG decode/encode and resize, photo
loading and the landmark photo transform."""
