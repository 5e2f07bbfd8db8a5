"""Phase 1, the images: datasets and class folders, their fingerprint, decoding, and the transform
that makes a view's pixels (torch-free constants and TRANSFORM_VERSION in `transform`)."""
