# the workspace's version (Cargo.toml); the SDK's tests check that the two agree
__version__ = "0.1.0"
