"""fewview-objects: parametric multi-view object renders for training priors."""
