"""One Prismatic Synthesis round: answer verification (`verify`), spherical k-means (`kmeans`), the
selection rules (`selection`) and the pure steps the round's assets call (`steps`)."""
