"""models/stardist3d"""
