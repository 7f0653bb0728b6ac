"""Engine core: scheduler, scheduler output, block manager, requests, outputs, the engine loop."""
