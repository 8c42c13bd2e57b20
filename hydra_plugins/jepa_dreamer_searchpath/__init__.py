"""SheepRL search-path plugin for the dreamer_v3_jepa configs."""
