"""The bottom layer: errors, atomic IO, the runtime (device, precision, seeding), the model-file
format, the machine's description, progress lines for logs and the timing interface. Imports
nothing from the rest of lwpar."""
