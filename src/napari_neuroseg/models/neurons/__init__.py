"""models/neurons"""
