"""BuildPlan + site to Apptainer definition text and env key; the pipeline's front half."""
