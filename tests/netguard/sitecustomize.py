# Loaded by every Python subprocess whose PYTHONPATH includes this folder (the end-to-end test).
import netguard

netguard.install()
