"""Report sections: each module registers its sections with pipeline.report.section."""
