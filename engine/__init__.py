"""What runs the model: strategies, run directories, the training loop, batched inference,
evaluation, prediction and export. The only package that imports all the others."""
