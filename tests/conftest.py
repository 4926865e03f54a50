import os

# No network here or in CI: make hub clients fail fast instead of retrying.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')
