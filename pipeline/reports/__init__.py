"""Report sections: each module registers one with @pipeline.report.section."""
