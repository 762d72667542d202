"""The data side of HealthyGAN, one job per module (data_loader.py re-exports the names):
loaders.py builds the loaders a mode reads (get_loader, folder_loader); splits.py finds the
images a mode reads (the Covid lists, the Folder layout, held-out images, lesion masks);
decode.py reads and preprocesses them (PNG, JPEG, TIFF, DICOM; unreadable images found before
training); cache.py keeps the preprocessed uint8 pixels once per image and serves batches from
them; datasets.py holds the datasets, the resumable epoch sampler and the cached loader;
overlap.py finds training images that are also test, validation or other-set images.
"""
