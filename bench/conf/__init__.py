"""Hydra config package (shipped in the wheel): dataset/ zoo/ method/ task/ device/ tracking/ experiment/."""
