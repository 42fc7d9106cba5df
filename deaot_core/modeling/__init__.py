"""Network modules of AOT / DeAOT: encoders, propagation layers, decoder, the model."""
